"""A process-wide fix for TensorFlow inside Streamlit (no page; imported by ``ui`` and the benches).

Streamlit's ``script_runner._clean_problem_modules`` (run after every script run) calls
``keras.backend.clear_session()``, which empties TensorFlow's kernel cache, so every compiled model
graph is rebuilt on the next call (≈ 1.3–3 s for InceptionResNetV2 on 2 cores;
``docs/benchmarks.md``, "In-app model calls").
"""
from __future__ import annotations


def keep_tf_kernels_across_reruns() -> bool:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit's ``script_runner._clean_problem_modules`` (run after each script run) clears Keras'
    global state, which empties TensorFlow's kernel cache: every compiled model graph is thrown
    away and rebuilt on the next call (``docs/benchmarks.md``, issue 15). This replaces it with a
    version that only closes matplotlib figures (the other half of what Streamlit does there).
    Idempotent; returns True when patched, False when this Streamlit version has no such hook."""
    import sys

    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:  # pragma: no cover - other Streamlit layouts
        return False
    current = getattr(script_runner, "_clean_problem_modules", None)
    if current is None:
        return False
    if getattr(current, "_keeps_keras", False):
        return True

    def _clean_problem_modules() -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            try:
                plt.close("all")
            except Exception:  # noqa: BLE001 - as Streamlit: never crash the app here
                pass

    _clean_problem_modules._keeps_keras = True
    _clean_problem_modules._original = current
    script_runner._clean_problem_modules = _clean_problem_modules
    return True
