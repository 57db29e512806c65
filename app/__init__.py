"""The web app that serves an exported model (see `streamlit_app.py`).

It depends on Streamlit, Pillow, NumPy and the LiteRT interpreter only: never on TensorFlow,
Keras or the `training` package, so that it fits on a 512 MB dyno.
"""
