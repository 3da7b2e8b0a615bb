"""Training losses of the KL autoencoder (:mod:`sgm.modules.autoencoding.losses`)."""
