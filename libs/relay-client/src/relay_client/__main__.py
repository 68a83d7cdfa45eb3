"""``python -m relay_client``: the ``relay`` CLI."""

from relay_client.cli import main

main()
