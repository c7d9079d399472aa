"""Every verb answers --help with an example, fast, without importing torch."""

import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from fashion_tagger.cli import app


def _verbs(cmd=None, prefix=()):
    cmd = cmd or get_command(app)
    for name, sub in getattr(cmd, "commands", {}).items():
        if getattr(sub, "commands", None):
            yield from _verbs(sub, (*prefix, name))
        else:
            yield (*prefix, name)


VERBS = sorted(_verbs())


def fresh_python(code: str) -> str:
    """What `code` prints in a new interpreter (so imports made by other tests do not count)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_pipeline_verbs_exist():
    names = {" ".join(v) for v in VERBS}
    assert {"import folders", "dataset info"} <= names


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_has_an_example(verb):
    result = CliRunner().invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert "fashion-tagger " in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; from fashion_tagger.cli import app; "
        "from typer.main import get_command; get_command(app); "
        "print('torch' in sys.modules)"
    )
    assert fresh_python(code) == "False"


def test_user_error_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fashion_tagger", "dataset", "info", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_public_api_names_resolve_lazily():
    code = (
        "import sys, fashion_tagger as ft; assert 'torch' not in sys.modules; "
        "names = [getattr(ft, n) for n in ft.__all__]; "
        "print(ft.list_importers()[:2], callable(ft.evaluate), callable(ft.train))"
    )
    assert fresh_python(code) == "['csv', 'fashion-mnist'] True True"
