"""The page `dvc plots show` writes its plots into, drawn with no network.

DVC's own page loads Vega, Vega-Lite and vega-embed from a CDN, so its plots are blank offline.
This one has the three inlined from the project's npm packages (web/package.json, installed by
`make`: Vega 5, Vega-Lite 5 and vega-embed 6, the majors DVC's specs are written for), so each
page DVC writes is one self-contained file. `make` writes it into the virtual environment and
names it in .dvc/config.local (plots.html_template):

    python -m talbench.dvc_page OUT.html
"""

from __future__ import annotations

import sys
from pathlib import Path

from talbench.errors import InputError, exit_status
from talbench.io import write_text

# in load order (each needs the ones before it), under the npm packages' folder
SCRIPTS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")  # DVC fills these wherever they are in the page
# DVC puts its CDN <script> tags only where a page says {scripts}: this one does not
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>talbench: DVC plots</title>
<style>
body { font-family: sans-serif; margin: 16px; }
body > div { display: inline-block; vertical-align: top; margin: 8px 16px 16px 0; }
img { max-width: 640px; }
</style>
SCRIPTS
</head>
<body>
{plot_divs}
</body>
</html>
"""


def page(packages: Path) -> str:
    """The page template with the scripts of `packages` (a node_modules folder) inlined."""
    scripts = []
    for name in SCRIPTS:
        path = packages / name
        if not path.is_file():
            raise InputError(packages, name, "file", "missing: install the web assets with make (npm ci --prefix web)")
        code = path.read_text(encoding="utf-8")
        # either would break the page: the first ends the inline script, the second is filled in by DVC
        if "</script" in code.lower() or any(p in code for p in PLACEHOLDERS):
            raise InputError(packages, name, "content", "holds '</script' or a DVC placeholder: cannot be inlined")
        scripts.append(f"<script>/* {name} */\n{code}\n</script>")
    return PAGE.replace("SCRIPTS", "\n".join(scripts), 1)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from talbench.data.validation import web_assets  # where the npm packages are, for the Data Docs too

    parser = argparse.ArgumentParser(prog="python -m talbench.dvc_page",
                                     description="Write the page template `dvc plots show` draws into offline.")
    parser.add_argument("out", type=Path, help="The template to write, e.g. .venv/share/talbench/dvc-plots.html.")
    args = parser.parse_args(argv)

    def write() -> None:
        text = page(web_assets())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text)

    return exit_status(write)


if __name__ == "__main__":
    sys.exit(main())
