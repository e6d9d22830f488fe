"""`python -m bncompare` is the same as the `bncompare` command."""

from bncompare.cli import app

app(prog_name="bncompare")
