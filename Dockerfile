FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# .dockerignore keeps .venv, .git, caches, demo and local stores/catalogs out of the context.
COPY . /app
RUN pip install --no-cache-dir '.[postgres]'
ENV AML_HOME=/data
CMD ["aml", "--help"]
