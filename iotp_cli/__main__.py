from iotp_cli.main import app

app()
