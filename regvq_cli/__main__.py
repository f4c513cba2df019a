"""`python -m regvq_cli` and `torchrun -m regvq_cli` run the same CLI as `regvq`."""

from regvq_cli.cli import main

if __name__ == "__main__":
    main()
