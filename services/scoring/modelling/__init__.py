"""The model pipeline: data, the binned logistic scorecard, ONNX export, parity and artifacts.

The scoring server imports the light modules: `contract`, `scale`, `parity`, `artifact` (numpy
and onnxruntime only). Training (`training.train_model`, `training.train_default_models`, and
`cli.train_with_progress` for `creditline model train`) pulls in sklearn, skl2onnx, matplotlib:
the `train` extra.
"""
