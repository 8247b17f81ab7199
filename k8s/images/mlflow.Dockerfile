# The MLflow tracking server image of k8s/mlflow.yaml: the official MLflow release image plus the
# PostgreSQL driver and boto3, pinned, baked in at build time (never pip-installed at pod start).
# Build and push, then point k8s/kustomization.yaml's `images:` entry at your registry:
#   docker build -f k8s/images/mlflow.Dockerfile -t registry.example.com/rl2f-mlflow:3.17.2 k8s/images
FROM ghcr.io/mlflow/mlflow:v3.17.2

# boto3 matches requirements.lock, so server and pipeline steps talk to S3 with the same client.
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.43.117 \
 && useradd --create-home --uid 1000 mlflow

USER 1000
EXPOSE 5000
