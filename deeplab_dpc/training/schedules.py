"""DeepLab's learning-rate policies (``utils/train_utils.get_model_learning_rate``).

poly: ``(base - end) * (1 - step / total) ** power + end``; step: ``base *
factor ** (step // decay_step)``. During the first ``slow_start_step`` steps
the rate is ``slow_start_learning_rate`` (burn-in "none") or rises linearly
from it to the policy's rate (burn-in "linear"). The rate is a pure function
of the optimizer's step, so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import keras
from keras import ops

POLICIES = ("poly", "step")
BURNIN_TYPES = ("none", "linear")


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class DeepLabSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """DeepLab's poly / step learning rate with slow start.

    Args:
        learning_policy: "poly" or "step".
        base_learning_rate: the initial rate.
        training_number_of_steps: total steps (poly decays to ``end_learning_rate`` there).
        learning_power: poly power (0.9 in DeepLab).
        learning_rate_decay_step, learning_rate_decay_factor: the step policy.
        slow_start_step, slow_start_learning_rate, slow_start_burnin_type: slow start.
        end_learning_rate: poly's final rate.

    Example:
        >>> schedule = DeepLabSchedule("poly", 0.01, 90000)
        >>> float(schedule(45000))  # 0.01 * 0.5 ** 0.9
    """

    def __init__(
        self,
        learning_policy="poly",
        base_learning_rate=0.0001,
        training_number_of_steps=30000,
        learning_power=0.9,
        learning_rate_decay_step=2000,
        learning_rate_decay_factor=0.1,
        slow_start_step=0,
        slow_start_learning_rate=1e-4,
        slow_start_burnin_type="none",
        end_learning_rate=0.0,
    ):
        if learning_policy not in POLICIES:
            raise ValueError(f"learning_policy={learning_policy!r} is unknown; valid: {list(POLICIES)}")
        if slow_start_burnin_type not in BURNIN_TYPES:
            raise ValueError(f"slow_start_burnin_type={slow_start_burnin_type!r} is unknown; valid: {list(BURNIN_TYPES)}")
        if training_number_of_steps < 1:
            raise ValueError(f"training_number_of_steps must be positive, got {training_number_of_steps}")
        if base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive, got {base_learning_rate}")
        if learning_policy == "step" and learning_rate_decay_step < 1:
            raise ValueError(f"learning_rate_decay_step must be positive, got {learning_rate_decay_step}")
        self.learning_policy = learning_policy
        self.base_learning_rate = float(base_learning_rate)
        self.training_number_of_steps = int(training_number_of_steps)
        self.learning_power = float(learning_power)
        self.learning_rate_decay_step = int(learning_rate_decay_step)
        self.learning_rate_decay_factor = float(learning_rate_decay_factor)
        self.slow_start_step = int(slow_start_step)
        self.slow_start_learning_rate = float(slow_start_learning_rate)
        self.slow_start_burnin_type = slow_start_burnin_type
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.learning_policy == "poly":
            progress = ops.minimum(step, float(self.training_number_of_steps)) / self.training_number_of_steps
            rate = (self.base_learning_rate - self.end_learning_rate) * ops.power(
                1.0 - progress, self.learning_power
            ) + self.end_learning_rate
        else:
            rate = self.base_learning_rate * ops.power(
                self.learning_rate_decay_factor, ops.floor(step / self.learning_rate_decay_step)
            )
        if self.slow_start_step > 0:
            if self.slow_start_burnin_type == "linear":
                fraction = step / self.slow_start_step
                slow = self.slow_start_learning_rate + (rate - self.slow_start_learning_rate) * fraction
            else:
                slow = ops.convert_to_tensor(self.slow_start_learning_rate, "float32")
            rate = ops.where(step < self.slow_start_step, slow, rate)
        return rate

    def get_config(self):
        return dict(
            learning_policy=self.learning_policy,
            base_learning_rate=self.base_learning_rate,
            training_number_of_steps=self.training_number_of_steps,
            learning_power=self.learning_power,
            learning_rate_decay_step=self.learning_rate_decay_step,
            learning_rate_decay_factor=self.learning_rate_decay_factor,
            slow_start_step=self.slow_start_step,
            slow_start_learning_rate=self.slow_start_learning_rate,
            slow_start_burnin_type=self.slow_start_burnin_type,
            end_learning_rate=self.end_learning_rate,
        )
