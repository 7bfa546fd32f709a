"""tfmf selects Keras 2 and refuses a process where Keras 3 already won; TensorFlow's log noise
is quiet by default and back with verbose=True, never overriding the user's own level."""
import os
import subprocess
import sys
import textwrap

import pytest


def run(code):
    env_code = "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None);" + code
    return subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True,
                          timeout=120)


def test_import_tfmf_first_gives_tf_keras():
    r = run("import tfmf, tensorflow as tf, tf_keras; "
            "assert tf.keras.__name__.startswith('tf_keras'), tf.keras.__name__; print('ok')")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok" in r.stdout


def test_keras3_already_imported_raises_clear_error():
    r = run("import tensorflow as tf; tf.keras.layers; import tfmf")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "Import tfmf before tensorflow" in r.stderr


def run_clean(code, **env_extra):
    """A fresh interpreter without TF_CPP_MIN_LOG_LEVEL (plus ``env_extra``)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)


LEVEL = ("import os, tfmf; tfmf.configure_tf_logging(verbose={}); "
         "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")


@pytest.mark.parametrize("verbose, user, expected", [
    (False, None, "3"),    # quiet by default
    (True, None, "None"),  # --verbose: TensorFlow's own default (0)
    (False, "1", "1"),     # a value the user set is never overridden...
    (True, "2", "2"),      # ...in either direction
])
def test_cpp_log_level(verbose, user, expected):
    r = run_clean(LEVEL.format(verbose), **({} if user is None else {"TF_CPP_MIN_LOG_LEVEL": user}))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_import_filter_drops_cpp_log_lines_only():
    code = textwrap.dedent(r'''
        import os, sys
        from tfmf._compat import filtered_stderr
        with filtered_stderr():
            os.write(2, b"2026-12-02 00:38:01.658438: E external/cuda_fft.cc:477] Unable\n")
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\n")
            os.write(2, b"E0000 00:00:1796171881.675109    5727 cuda_dnn.cc:8310] Unable\n")
            os.write(2, b"F0000 00:00:1796171881.675109    5727 fatal.cc:1] keep me\n")
            print("a python warning", file=sys.stderr)
        print("after", file=sys.stderr)
    ''')
    r = run_clean(code)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["F0000 00:00:1796171881.675109    5727 fatal.cc:1] keep me",
                                     "a python warning", "after"]


def test_quiet_import_of_tensorflow_prints_nothing():
    r = run_clean("import tfmf, tensorflow as tf; print(tf.constant(2.0).numpy() * 2)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "4.0" and r.stderr == "", r.stderr


def test_python_loggers_quiet_then_restored():
    r = run_clean("import logging, tfmf\n"
                  "tfmf.configure_tf_logging(False); a = logging.getLogger('tensorflow').level\n"
                  "tfmf.configure_tf_logging(True); b = logging.getLogger('tensorflow').level\n"
                  "print(a == logging.ERROR, b == logging.NOTSET)")
    assert r.stdout.strip() == "True True", r.stderr
