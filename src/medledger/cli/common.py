"""What every ``medledger`` command shares: consoles, common options, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from medledger.client import Client
from medledger.crypto.keys import load_key_file
from medledger.errors import InvalidInput

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NodeOpt = Annotated[
    str,
    typer.Option("--node", envvar="MEDLEDGER_NODE", help="Node API base URL.", show_default=False),
]
AsOpt = Annotated[
    Path,
    typer.Option(
        "--as", envvar="MEDLEDGER_KEY", help="Key file of the identity acting.", show_default=False
    ),
]
DirOpt = Annotated[Path, typer.Option("--dir", help="Consortium directory.")]


def emit(doc: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    if as_json or human is None:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        human()


@contextmanager
def client_for(node: str, key_file: Path) -> Iterator[Client]:
    if not node:
        raise InvalidInput("no node given (--node URL or MEDLEDGER_NODE)", code="NO_NODE")
    key = load_key_file(key_file)
    with Client(node, key) as c:
        yield c
