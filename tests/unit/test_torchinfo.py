"""Which interpreter is asked about torch, and what is logged for each outcome."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from dynllm import torchinfo
from dynllm.config import build_config


def script(tmp_path: Path, first_line: str) -> Path:
    p = tmp_path / "transformers"
    p.write_text(first_line + "\nimport sys\n")
    p.chmod(0o755)
    return p


def cfg(binary: Path | str, backends: list[str]):  # noqa: ANN201
    return build_config(
        {"enabled_backends": backends, "backend": {"transformers_binary": str(binary)}}, Path("/")
    )


def test_shebang_forms(tmp_path: Path) -> None:
    assert torchinfo.script_interpreter(str(script(tmp_path, "#!/venv/bin/python"))) == (
        "/venv/bin/python"
    )
    env_form = script(tmp_path, "#!/usr/bin/env python3")
    assert torchinfo.script_interpreter(str(env_form)).endswith("python3")  # type: ignore[union-attr]
    assert torchinfo.script_interpreter(str(script(tmp_path, "ELF..."))) is None
    assert torchinfo.script_interpreter(str(tmp_path / "missing")) is None
    assert torchinfo.script_interpreter("no-such-program-anywhere") is None


def test_transformers_interpreter_is_asked(tmp_path: Path) -> None:
    c = cfg(script(tmp_path, f"#!{sys.executable}"), ["llamacpp", "transformers"])
    assert torchinfo.interpreter_for(c) == (
        sys.executable,
        f"transformers ({tmp_path}/transformers)",
    )


def test_missing_torch_is_one_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # This interpreter (the project's own env) has no torch: the child fails to import it.
    c = cfg(script(tmp_path, f"#!{sys.executable}"), ["transformers"])
    with caplog.at_level(logging.INFO, logger="dynllm.torch"):
        torchinfo.report(c)
    (rec,) = caplog.records
    assert rec.levelname == "WARNING"
    assert "torch unusable" in rec.getMessage()
    assert "No module named 'torch'" in rec.getMessage()


def test_detect_parses_the_childs_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch = tmp_path / "site" / "torch"
    fake_torch.mkdir(parents=True)
    (fake_torch / "__init__.py").write_text(
        "__version__ = '9.9'\n"
        "class cuda:\n    @staticmethod\n    def is_available(): return True\n"
        "class backends:\n    pass\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    assert torchinfo.detect(sys.executable) == {"version": "9.9", "backends": ["cpu", "cuda"]}


def test_no_transformers_and_no_torch(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dynllm.torch"):
        torchinfo.report(cfg("transformers", ["llamacpp"]))
    assert [r.getMessage() for r in caplog.records] == [
        "torch backends: torch is not installed in dynllm's environment"
    ]


def test_venv_python_next_to_the_script_wins_over_a_launcher(tmp_path: Path) -> None:
    # pip writes a /bin/sh trampoline for long venv paths; the venv's python is next to it.
    launcher = script(tmp_path, '#!/bin/sh\n\'\'\'exec\' "/long path/python" "$0" "$@"')
    assert torchinfo.script_interpreter(str(launcher)) is None  # sh is not Python
    venv_python = tmp_path / "python"
    venv_python.symlink_to(sys.executable)
    assert torchinfo.script_interpreter(str(launcher)) == str(venv_python)


def test_env_with_options(tmp_path: Path) -> None:
    found = torchinfo.script_interpreter(str(script(tmp_path, "#!/usr/bin/env -S python3 -u")))
    assert found is not None and found.endswith("python3")


def test_stop_kills_a_slow_check(tmp_path: Path) -> None:
    import threading
    import time

    slow = tmp_path / "slowpy"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    check = torchinfo.TorchCheck()
    errors: list[str] = []

    def run() -> None:
        try:
            check.detect(str(slow))
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    check.stop()
    t.join(5)
    assert not t.is_alive() and errors
