"""The reinforcement-learning controller (NASNet, Nekrasov et al.): an LSTM that writes a cell decision
by decision, trained with PPO (or REINFORCE) on the proxy scores of the cells it proposed.

A cell of B branches is 2B decisions: for branch i its input (one of i + 1
choices: the backbone or an earlier branch), then its operation (one of the
space's 81). At step t the LSTM reads the previous decision (a start token at
t = 0) and the step's position, and a softmax over the step's valid choices
gives the next decision. The probability of a cell is the product of its
decisions' probabilities.

Training (``Controller.update``) treats a whole cell as one action (ENAS,
Nekrasov et al.): with ``advantage = reward - baseline`` (the baseline an
exponential moving average of past rewards, decay ``baseline_decay``, the
advantage taken before the baseline moves), PPO minimises
``-min(r A, clip(r, 1 - clip, 1 + clip) A) - entropy_weight * H`` over
``epochs`` passes on the batch, ``r`` the ratio of the cell's probability now
to its probability when proposed; REINFORCE minimises ``-log p A - entropy_weight * H``.
The loss is an ordinary Keras loss, so the controller trains on any backend.

Nekrasov et al. used a 2-layer LSTM of 100 units, PPO clip 0.1, Adam lr 1e-4
and a baseline decay of 0.95 (the defaults here, but for the learning rate:
searches of hundreds rather than thousands of cells need a faster one).
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Sequence

import numpy as np

from deeplab_dpc.core.spec import BACKBONE_INPUT, CellSpec, SearchSpace
from deeplab_dpc.fileio import write_bytes_atomically
from deeplab_dpc.nas import space as space_lib

ALGORITHMS = ("ppo", "reinforce")
_NEG = -1e9


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """The controller and its training; each field is ``search``'s flag ``rl_<field>``.

    Args:
        algorithm: "ppo" or "reinforce".
        hidden: units of each LSTM layer.
        layers: LSTM layers.
        learning_rate: Adam's learning rate.
        clip: PPO's clip range.
        entropy_weight: weight of the decisions' mean entropy (exploration bonus).
        baseline_decay: decay of the reward baseline's moving average.
        epochs: passes over each batch (PPO; REINFORCE makes one).
        batch_size: completed proposals per update.
    """

    algorithm: str = "ppo"
    hidden: int = 100
    layers: int = 2
    learning_rate: float = 1e-3
    clip: float = 0.1
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.95
    epochs: int = 4
    batch_size: int = 5

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"rl_algorithm={self.algorithm!r} unknown; valid: {list(ALGORITHMS)}")
        for name in ("hidden", "layers", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"rl_{name}={value!r} must be a positive integer")
        if not self.learning_rate > 0:
            raise ValueError(f"rl_learning_rate={self.learning_rate} must be positive")
        if not 0 < self.clip < 1:
            raise ValueError(f"rl_clip={self.clip} must be in (0, 1)")
        if self.entropy_weight < 0:
            raise ValueError(f"rl_entropy_weight={self.entropy_weight} must be >= 0")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"rl_baseline_decay={self.baseline_decay} must be in [0, 1)")


class Controller:
    """An LSTM policy over the cells of ``space``.

    Args:
        space: the search space (its branch count and operations).
        config: a ``ControllerConfig``.
        seed: initial weights.
    """

    def __init__(self, space: SearchSpace, config: ControllerConfig = ControllerConfig(), seed: int = 0):
        import keras  # noqa: PLC0415

        self.space = space
        self.config = config
        self.seed = int(seed)
        self.ops = tuple(space.operations())
        self.op_names = tuple(space_lib.op_name(op) for op in self.ops)
        self.num_branches = space.num_branches
        self.steps = 2 * self.num_branches
        self.choices = max(len(self.ops), self.num_branches)
        mask = np.zeros((self.steps, self.choices), bool)
        for i in range(self.num_branches):
            mask[2 * i, : i + 1] = True  # inputs -1 .. i-1 as actions 0 .. i
            mask[2 * i + 1, : len(self.ops)] = True
        self.mask = mask
        self.baseline: float | None = None
        self.consumed: list[int] = []  # trial numbers learnt from, in order
        keras.utils.set_random_seed(self.seed)
        self.model = self._build(keras)
        self.model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=self._loss)
        self.model.optimizer.build(self.model.trainable_variables)

    # ----------------------------------------------------------------------------------- model
    def _build(self, keras):
        vocabulary = 1 + self.num_branches + len(self.ops)  # start, inputs, operations
        tokens = keras.Input((self.steps,), dtype="int32", name="previous_decision")
        positions = keras.Input((self.steps,), dtype="int32", name="step")
        x = keras.layers.Embedding(vocabulary, self.config.hidden, name="decision_embedding")(tokens)
        x = x + keras.layers.Embedding(self.steps, self.config.hidden, name="step_embedding")(positions)
        for i in range(self.config.layers):
            x = keras.layers.LSTM(self.config.hidden, return_sequences=True, name=f"lstm_{i}")(x)
        logits = keras.layers.Dense(self.choices, name="logits")(x)
        return keras.Model([tokens, positions], logits, name="controller")

    def _inputs(self, actions: np.ndarray) -> list[np.ndarray]:
        """Model inputs for decision sequences ``[n, T]``: each step reads the previous decision."""
        actions = np.asarray(actions, np.int32).reshape(-1, self.steps)
        tokens = np.zeros_like(actions)
        for t in range(1, self.steps):
            offset = 1 if (t - 1) % 2 == 0 else 1 + self.num_branches
            tokens[:, t] = offset + actions[:, t - 1]
        positions = np.broadcast_to(np.arange(self.steps, dtype=np.int32), actions.shape).copy()
        return [tokens, positions]

    def _log_softmax(self, logits):
        from keras import ops  # noqa: PLC0415

        masked = ops.where(ops.convert_to_tensor(self.mask), logits, _NEG)
        return ops.log_softmax(masked, axis=-1)

    def _loss(self, y_true, y_pred):
        """y_true ``[n, T + 2]``: the decisions, their log-probability when proposed, the advantage."""
        from keras import ops  # noqa: PLC0415

        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1, self.steps + 2))
        actions = ops.cast(y_true[:, : self.steps], "int32")
        old_logp, advantage = y_true[:, self.steps], y_true[:, self.steps + 1]
        logp_all = self._log_softmax(ops.cast(y_pred, "float32"))
        logp = ops.sum(ops.sum(ops.one_hot(actions, self.choices) * logp_all, axis=-1), axis=-1)
        if self.config.algorithm == "ppo":
            ratio = ops.exp(logp - old_logp)
            clipped = ops.clip(ratio, 1.0 - self.config.clip, 1.0 + self.config.clip)
            policy = -ops.minimum(ratio * advantage, clipped * advantage)
        else:
            policy = -logp * advantage
        probabilities = ops.exp(logp_all) * ops.cast(ops.convert_to_tensor(self.mask), "float32")
        entropy = -ops.mean(ops.sum(probabilities * ops.where(self.mask, logp_all, 0.0), axis=-1), axis=-1)
        return policy - self.config.entropy_weight * entropy

    # ----------------------------------------------------------------------------------- cells
    def actions_of(self, spec: CellSpec) -> np.ndarray:
        """The decisions that write ``spec``: ``[T]`` ints."""
        out = []
        for branch in spec.branches:
            out.append(branch.input - BACKBONE_INPUT)
            out.append(self.op_names.index(space_lib.op_name(branch)))
        return np.asarray(out, np.int32)

    def spec_of(self, actions: Sequence[int]) -> CellSpec:
        params = {}
        for i in range(self.num_branches):
            params[space_lib.input_param(i)] = int(actions[2 * i]) + BACKBONE_INPUT
            params[space_lib.op_param(i)] = self.op_names[int(actions[2 * i + 1])]
        return space_lib.params_to_spec(params, self.space)

    def log_probs(self, actions: np.ndarray) -> np.ndarray:
        """Log-probability of each decision sequence ``[n, T]`` under the controller now: ``[n]``."""
        actions = np.asarray(actions, np.int32).reshape(-1, self.steps)
        logits = np.asarray(self.model.predict_on_batch(self._inputs(actions)), np.float64)
        logp_all = _masked_log_softmax(logits, self.mask)
        picked = np.take_along_axis(logp_all, actions[..., None], axis=-1)[..., 0]
        return picked.sum(axis=-1)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """One cell's decisions, drawn step by step with ``rng``, and its log-probability."""
        actions = np.zeros(self.steps, np.int32)
        logp = 0.0
        for t in range(self.steps):
            logits = np.asarray(self.model.predict_on_batch(self._inputs(actions[None])), np.float64)[0, t]
            logp_t = _masked_log_softmax(logits[None, None], self.mask[t : t + 1])[0, 0]
            p = np.exp(logp_t)
            p = p / p.sum()
            actions[t] = rng.choice(self.choices, p=p)
            logp += float(logp_t[actions[t]])
        return actions, logp

    # ----------------------------------------------------------------------------------- learning
    def update(self, actions: np.ndarray, old_logp: Sequence[float], rewards: Sequence[float]) -> float:
        """One update on a batch of proposals; returns the last pass's mean loss."""
        advantages = []
        for reward in rewards:  # in completion order: each sees the baseline of the rewards before it
            reward = float(reward)
            if self.baseline is None:
                self.baseline = reward
            advantages.append(reward - self.baseline)
            self.baseline = (
                self.config.baseline_decay * self.baseline + (1 - self.config.baseline_decay) * reward
            )
        actions = np.asarray(actions, np.int32).reshape(-1, self.steps)
        y = np.concatenate(
            [
                actions.astype(np.float32),
                np.asarray(old_logp, np.float32)[:, None],
                np.asarray(advantages, np.float32)[:, None],
            ],
            axis=1,
        )
        loss = float("nan")
        for _ in range(self.config.epochs if self.config.algorithm == "ppo" else 1):
            loss = float(np.asarray(self.model.train_on_batch(self._inputs(actions), y)))
        return loss

    # ----------------------------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        out = {f"w{i}": np.asarray(w) for i, w in enumerate(self.model.get_weights())}
        for i, v in enumerate(self.model.optimizer.variables):
            out[f"o{i}"] = np.asarray(v)
        out["baseline"] = np.asarray(np.nan if self.baseline is None else self.baseline, np.float64)
        out["consumed"] = np.asarray(self.consumed, np.int64)
        return out

    def save(self, path: str) -> None:
        """Weights, optimizer state, baseline and the trials learnt from, as one .npz (atomic)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.state())
        write_bytes_atomically(path, buffer.getvalue())

    def load(self, path: str) -> None:
        with np.load(path, allow_pickle=False) as z:
            weights = [z[f"w{i}"] for i in range(len(self.model.get_weights()))]
            self.model.set_weights(weights)
            for i, v in enumerate(self.model.optimizer.variables):
                v.assign(z[f"o{i}"])
            baseline = float(z["baseline"])
            self.baseline = None if np.isnan(baseline) else baseline
            self.consumed = [int(n) for n in z["consumed"]]


def _masked_log_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    masked = np.where(mask, logits, _NEG)
    masked = masked - masked.max(axis=-1, keepdims=True)
    return masked - np.log(np.exp(masked).sum(axis=-1, keepdims=True))


def controller_path(state_dir: str) -> str:
    return os.path.join(state_dir, "controller.npz")
