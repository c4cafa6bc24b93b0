"""``python -m fsseg.models``: the parameter table of every method (``fsseg params``)."""
from fsseg.params import main

if __name__ == "__main__":
    main(prog="python -m fsseg.models")
