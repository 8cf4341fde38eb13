from pytrain.cli import command

command()
