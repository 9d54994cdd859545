"`python -m fast_resnet ...` runs the command line (see `fast_resnet.cli`)"
from fast_resnet.cli import main

if __name__ == '__main__': main()
