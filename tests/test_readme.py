"""The README's usage snippet runs and reports a trustworthy fit."""

import contextlib
import io
import pathlib
import re


def test_readme_snippet():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {})
    assert "Pareto k" in output.getvalue()
    assert "(good;" in output.getvalue()
