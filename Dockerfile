FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir '.[postgres]'
ENV AML_HOME=/data
CMD ["aml", "--help"]
