"""tfmf selects Keras 2 and refuses a process where Keras 3 already won."""
import subprocess
import sys


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
