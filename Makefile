# The two fresh-machine commands are `make run` and `make test` (see README.md).
.PHONY: run test stop status bootstrap bootstrap-dev lint typecheck

run: bootstrap            ## stack + pipeline + simulator + dashboard, in the background
	.venv/bin/iotp up

test: bootstrap-dev       ## lint + type check + the whole test suite against real local services
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/python -m pytest

stop:                     ## stop the pipeline and the stack
	.venv/bin/iotp down

status:
	.venv/bin/iotp status

bootstrap:
	bash infra/bootstrap.sh

bootstrap-dev:
	bash infra/bootstrap.sh --dev

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck: bootstrap-dev  ## mypy over the packages in [tool.mypy] files (pyproject.toml)
	.venv/bin/mypy
