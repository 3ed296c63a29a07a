"""Optional integrations of `watch`: TensorBoard, a Lightning Callback, a transformers TrainerCallback.

Each imports its library only when used; install the matching extra (`modinspect[tensorboard]`, ...).
"""
