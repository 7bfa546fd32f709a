"""Training: Keras' ``fit`` set up from a TrainConfig (fit.py), the loss-components model base
(model.py), tfmf's callbacks (callbacks.py), optimizers + schedules, precision policies."""
