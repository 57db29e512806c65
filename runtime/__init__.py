"""What training and serving share, free of TensorFlow so that the 512 MB web dyno can import it.

- `runtime.imaging`: how an image file becomes the RGB pixels a model sees.
"""
