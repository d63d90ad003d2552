"""Descriptor fusion (fixed and learned) and the training LightningModule."""
