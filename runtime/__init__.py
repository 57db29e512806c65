"""What training and serving share, free of TensorFlow so that the 512 MB web dyno can import it.

- `runtime.imaging`: how an image file becomes the RGB pixels a model sees.
- `runtime.litert`: running a LiteRT model file of one image, its outputs found by name, from many threads.
- `runtime.model_folder`: what an exported model folder holds (file names, model card, labels),
  and reading one with every file checked against the others.
"""
