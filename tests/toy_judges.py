"""A judge for tests: fast, deterministic, judge-shaped; registered as ``test-brightness`` on import."""

import numpy as np

from conceptvault.evaluate import ClassifierJudge, register_judge


def _brightness_judge(suite, device):
    """Reads an image as 'bright' or 'dark' from its mean grey level."""

    def predict(images):
        level = np.array([np.asarray(image, dtype=np.float64).mean() / 255 for image in images])
        return np.stack([level, 1 - level], axis=1)

    return ClassifierJudge("test-brightness", ["bright", "dark"], suite.top_k, predict)


register_judge("test-brightness", _brightness_judge)
