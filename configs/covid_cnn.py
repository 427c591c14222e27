"""The X-ray tutorial's own CNN: Conv32-Conv64-Pool-Dropout-Conv64-Pool-Dropout-Dense64-Dropout.

The data, augmentation and epochs are configs/covid.py's. The seed ends in Dense(2, sigmoid)
with binary cross-entropy on one-hot labels; here the two outputs are a softmax with categorical
cross-entropy (the same decision, probabilities that sum to 1).
"""

import os
import runpy

from imgcls.config import default_config

covid_recipe = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "covid.py"))


def get_config():
  c = covid_recipe["get_config"]()
  c.model = default_config().model  # The InceptionV3 settings do not apply.
  c.model.name = "dropout_cnn"
  c.optimizer.learning_rate = 1e-3  # Keras's Adam default, as the seed's compile(optimizer='adam').
  return c
