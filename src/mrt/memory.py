"""Where model weights sit in memory: whole on each process while ZeRO-3 is lifted, and handed back to the system
once the objects that held them are dropped."""

import contextlib
import ctypes
import gc


@contextlib.contextmanager
def without_zero3():
    """Lift transformers' DeepSpeed ZeRO-3 registration for a while (set when TrainingArguments are built under a
    ZeRO-3 config): models loaded meanwhile are whole, not partitioned, and their `generate` does not wait for the
    other ranks at every token (synced_gpus)."""
    from transformers.integrations import deepspeed as ds

    saved = ds._hf_deepspeed_config_weak_ref
    ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        ds._hf_deepspeed_config_weak_ref = saved


def release_memory() -> None:
    """Free what dropped trainers, models and engines still hold: they sit in reference cycles until collected,
    and glibc keeps freed heap pages until trimmed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
