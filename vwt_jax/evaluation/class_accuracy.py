"""Classification accuracy score: is a class-conditional sample of its class?

The classification accuracy score (CAS, Ravuri and Vinyals, 2019) asks a
classifier trained on real images for the class of each generated one. Here
it is a small network trained from scratch in seconds on the dataset's real
training images (no pretrained weights); its accuracy on real held-out images
is the ceiling the samples are read against. Training images are flipped and
some blurred at random: reconstructions are softer than real images, and the
score should judge their shape, not their sharpness.
"""

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
from PIL import ImageFilter


class SmallConvNet(nn.Module):
  """Three stages of two 3x3 convolutions (then 2x2 average pooling), a linear head."""

  num_classes: int
  widths: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, images):
    x = images
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}a")(x))
      x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}b")(x))
      if i < len(self.widths) - 1:
        x = nn.avg_pool(x, (2, 2), (2, 2))
    # Global max pooling: a shape's evidence sits wherever the shape is.
    return nn.Dense(self.num_classes, name="head")(jnp.max(x, axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  steps: int = 500
  batch_size: int = 64
  learning_rate: float = 2e-3
  # Each training image is blurred with this probability, by a Gaussian of a
  # radius drawn from `blur_radius` (pixels).
  blur_probability: float = 0.5
  blur_radius: tuple[float, float] = (0.5, 1.5)
  seed: int = 0


def _to_float(images):
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def train_step(model, tx, params, opt_state, images, labels):
  """One Adam step of cross-entropy on a uint8 batch."""
  def loss_fn(p):
    logits = model.apply({"params": p}, _to_float(images))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def train(images: np.ndarray, labels: np.ndarray, num_classes: int,
          settings: TrainSettings = TrainSettings()):
  """Trains `SmallConvNet` on uint8 NHWC `images`; returns (model, params, losses).

  Batches are drawn with replacement from a seeded generator (the same inputs
  give the same classifier), flipped left to right (the classes are closed
  under mirroring) and blurred at random.
  """
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
  if len(labels) != len(images):
    raise ValueError(f"labels: {len(labels)} labels for {len(images)} images")
  model = SmallConvNet(num_classes)
  params = model.init(jax.random.key(settings.seed), _to_float(images[:1]))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))
  opt_state = tx.init(params)

  rng = np.random.default_rng(settings.seed)
  losses = []
  for _ in range(settings.steps):
    index = rng.integers(len(images), size=settings.batch_size)
    batch = images[index]
    flip = rng.random(settings.batch_size) < 0.5
    batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
    batch = _blur_some(batch, rng, settings)
    params, opt_state, loss = train_step(model, tx, params, opt_state, batch,
                                         labels[index].astype(np.int32))
    losses.append(loss)
  return model, params, np.asarray(jax.device_get(losses), np.float32)


def _blur_some(images, rng, settings):
  blur = rng.random(len(images)) < settings.blur_probability
  radii = rng.uniform(*settings.blur_radius, size=len(images))
  return np.stack([
      np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(float(radius))))
      if b else image for image, b, radius in zip(images, blur, radii)])


@functools.partial(jax.jit, static_argnums=0)
def _classes(model, params, images):
  return jnp.argmax(model.apply({"params": params}, _to_float(images)), -1)


def predict(model: SmallConvNet, params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Predicted class of each uint8 NHWC image."""
  out = [np.asarray(_classes(model, params, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros((0,), np.int64)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> tuple[float, list[float | None]]:
  """(overall accuracy, accuracy of each class; None for a class with no images)."""
  if len(labels) == 0:
    raise ValueError("no images to score")
  correct = predictions == labels
  per_class = [float(correct[labels == c].mean()) if np.any(labels == c) else None
               for c in range(num_classes)]
  return float(correct.mean()), per_class
