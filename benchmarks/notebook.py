"""The origin notebook's code, unchanged in substance: plain Keras, no bncompare.

Flatten -> Dense(256, relu) -> [BN] -> Dense(128, relu) -> [BN] -> Dense(10, softmax), Adam,
sparse categorical cross-entropy, batch 32, 5 epochs, the test split as validation data.
Writes one JSON line (to $BENCH_RESULT, else stdout): seconds and final validation accuracy of each model.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
from tensorflow import keras  # noqa: E402

EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
with np.load(os.path.join(os.environ["BNCOMPARE_DATA_DIR"], "mnist.npz")) as f:
    x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
x_train, x_test = x_train / 255.0, x_test / 255.0


def make(batch_norm: bool):
    layers = [keras.layers.Flatten(input_shape=(28, 28)), keras.layers.Dense(256, activation="relu")]
    layers += [keras.layers.BatchNormalization()] if batch_norm else []
    layers += [keras.layers.Dense(128, activation="relu")]
    layers += [keras.layers.BatchNormalization()] if batch_norm else []
    layers += [keras.layers.Dense(10, activation="softmax")]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


result = {}
for name, batch_norm in (("no_bn", False), ("bn", True)):
    model = make(batch_norm)
    started = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0,
                        validation_data=(x_test, y_test))
    result[name] = {"seconds": time.perf_counter() - started,
                    "val_accuracy": history.history["val_accuracy"][-1]}
with open(os.environ.get("BENCH_RESULT", "/dev/stdout"), "w") as f:
    f.write(json.dumps(result) + "\n")
