"""Training of the SegFormer damage segmenter (paper section 2.3): data, augmentation, BCED loss,
learning-rate schedule, the training loop and the ``train`` / ``evaluate`` / ``uncertainty``
commands."""
