"""`python -m ec2backup.cli`: the same as the `ec2backup` console script."""

from ec2backup.cli import main

main()
