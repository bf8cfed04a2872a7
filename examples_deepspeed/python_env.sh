# Sourced by the launch scripts (with REPO set): PYTHON is the interpreter that runs everything,
# the launcher included: $PYTHON when set, else the repository's .venv/bin/python when it exists,
# else python3. It must import torch and deepspeed, or the script stops with one line saying what
# to set, instead of "No module named 'torch'" from a rank or "deepspeed: not found".
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
if ! _missing=$($PYTHON -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "deepspeed") if u.find_spec(m) is None))' 2>&1); then
  echo "error: PYTHON=$PYTHON does not run (${_missing##*: }); set PYTHON to the python of the environment that has torch and deepspeed (e.g. PYTHON=.venv/bin/python)" >&2
  exit 2
elif [ -n "$_missing" ]; then
  echo "error: PYTHON=$PYTHON cannot import ${_missing// / or }; set PYTHON to the python of the environment that has them (e.g. PYTHON=.venv/bin/python), or activate it" >&2
  exit 2
fi
unset _missing
