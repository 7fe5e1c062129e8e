from daemon.cli.main import run

run()
