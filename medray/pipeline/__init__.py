"""Ray Data pipelines: classification (evaluate) and segmentation, and what they share."""

import contextlib
import warnings


@contextlib.contextmanager
def ray_remote_args_accepted():
    """Around ``map_batches`` calls that pass ``ray_remote_args_fn`` / ``**ray_remote_args``.

    Ray 2.60 (the pinned minor) deprecates both for removal in 2.64, with no named
    replacement yet for what medray passes through them (unfused decode tasks,
    max_restarts / max_task_retries, a sweep trial's placement group). Shown on every run,
    the warning would only alarm users; revisit when the pin moves.  A context, not a
    global filter: Ray installs its own filter for its warnings when it is imported.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args(_fn)?` is deprecated", category=DeprecationWarning)
        yield
