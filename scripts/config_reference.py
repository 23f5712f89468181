"""Write docs/reference/config.md from the typed options classes (``make docs`` runs it)."""

from pathlib import Path

from dso_cli.config.reference import render_reference

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "docs" / "reference" / "config.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_reference())
    print(f"wrote {out}")
