from iotp.cli import app

app()
