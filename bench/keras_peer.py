"""The seed recipe in plain Keras/TensorFlow, on the images and split of an ffd run: a peer figure.

``python -m ffd.bench --peer-keras VENV`` runs this file with VENV's python (a virtualenv
with ``tensorflow-cpu``; ffd itself never imports TensorFlow). It trains what the seed
notebook trains: 224x224 inputs, random flip and rotation, a frozen ImageNet MobileNetV2
without its top, Flatten + Dense(2, softmax), Adam, sparse categorical cross-entropy,
20 epochs, on the train split of the run's manifest.csv, picks the epoch with the best
validation accuracy and scores the test split. It writes a JSON file with the test
accuracy and AUROC and the time the training took.

Keras downloads its ImageNet weights on first use; on a machine without internet, put
``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5`` into
``~/.keras/models/`` first, or pass ``--weights none`` for a timing-only run (random weights).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

SIZE = 224


def split_files(manifest: Path, split: str) -> tuple[list[str], list[int]]:
    with manifest.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok" and r["split"] == split]
    return [r["path"] for r in rows], [int(r["label"]) for r in rows]


def dataset(files: list[str], labels: list[int], batch: int, shuffle: bool) -> tf.data.Dataset:
    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, (SIZE, SIZE)), label

    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    if shuffle:
        ds = ds.shuffle(len(files), seed=42, reshuffle_each_iteration=True)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)


def model(weights: str | None) -> tf.keras.Model:
    base = tf.keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=weights)
    base.trainable = False
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.RandomFlip("horizontal_and_vertical")(inputs)
    x = tf.keras.layers.RandomRotation(20 / 360)(x)
    x = tf.keras.applications.mobilenet_v2.preprocess_input(x)
    x = base(x, training=False)
    outputs = tf.keras.layers.Dense(2, activation="softmax")(tf.keras.layers.Flatten()(x))
    net = tf.keras.Model(inputs, outputs)
    net.compile(tf.keras.optimizers.Adam(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random fake scores above a random real (ties count half)."""
    fake, real = scores[labels == 1], scores[labels == 0]
    return float((fake[:, None] > real[None]).mean() + 0.5 * (fake[:, None] == real[None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, required=True, help="an ffd run's manifest.csv")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--weights", default="imagenet", help="imagenet, or none (random: timing only)")
    args = parser.parse_args()
    tf.keras.utils.set_random_seed(42)
    weights = None if args.weights == "none" else args.weights
    try:
        net = model(weights)
    except Exception as err:  # Keras raises what urllib raised when it can't download
        raise SystemExit(
            f"keras_peer: no MobileNetV2 ImageNet weights ({err}); see this file's docstring."
        ) from err
    train, val, test = (split_files(args.manifest, s) for s in ("train", "val", "test"))
    best = args.out.with_suffix(".weights.h5")
    keep = tf.keras.callbacks.ModelCheckpoint(
        best, monitor="val_accuracy", save_best_only=True, save_weights_only=True
    )
    start = time.perf_counter()
    net.fit(dataset(*train, args.batch, True), validation_data=dataset(*val, args.batch, False),
            epochs=args.epochs, callbacks=[keep], verbose=2)  # fmt: skip
    fit_s = time.perf_counter() - start
    net.load_weights(best)
    p_fake = net.predict(dataset(*test, args.batch, False), verbose=0)[:, 1]
    labels = np.array(test[1])
    result = {
        "test_acc": round(float(((p_fake >= 0.5) == labels).mean()), 4),
        "test_auroc": round(auroc(labels, p_fake), 4),
        "fit_s": round(fit_s, 1),
        "weights": args.weights,
        "tensorflow": tf.__version__,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
