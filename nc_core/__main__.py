"""`python -m nc_core`: the single-run CLI (see nc_core.cli)."""
from nc_core.cli import main

if __name__ == "__main__":
    main()
