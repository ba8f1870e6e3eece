# An example training image for deploy/kubernetes/examples/train-job.yaml:
# the dtr image plus PyTorch (CPU build) and examples/train_mlp.py.
# Your own training image only needs `pip install dtr` beside your framework.
#
#   docker build -f deploy/Dockerfile -t dtr:0.1.0 .
#   docker build -f deploy/train.Dockerfile -t dtr-train:0.1.0 .
#
# The context is the repository root, trimmed by train.Dockerfile.dockerignore.

ARG DTR_IMAGE=dtr:0.1.0
FROM ${DTR_IMAGE}
USER root
# The CPU wheel: the default index would pull a multi-GB CUDA build. For GPU
# nodes use a CUDA index (https://download.pytorch.org/whl/cu126, ...) instead.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY examples/train_mlp.py /app/train_mlp.py
USER 10001:10001
WORKDIR /home/dtr
HEALTHCHECK NONE
ENTRYPOINT ["python", "/app/train_mlp.py"]
