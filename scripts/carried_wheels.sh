# Sourced by the GPU scripts (gpu_lease.sh, gpu_reproduce.sh): the wheels carried in .whl/ (tensorboardX, absent
# from the GPU image, which has no PyPI) installed apart from the image's Python, into /tmp/site, which joins
# PYTHONPATH. Needs PYTHON; returns 2 where the install fails.
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || return 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
