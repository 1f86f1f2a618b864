"""The Typer application: the ``imgclass`` root with ``--debug`` and ``--version``, and the ``data`` group.
The commands live in the ``cmd_*`` modules, one job each."""

from __future__ import annotations

from typing import Annotated

import typer

from ._output import install_data_warnings

app = typer.Typer(
    name="imgclass",
    help="From a folder of images to a trained, evaluated image classifier.\n\n"
         "Example: imgclass compare photos/ --methods hog+svm,lbp+rf,pixels+knn",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Inspect datasets.", epilog="Example: imgclass data check photos/",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


def _version(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"imgclass {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """From a folder of images to a trained, evaluated image classifier."""
    install_data_warnings()
