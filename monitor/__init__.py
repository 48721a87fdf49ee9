"""workset-monitor: claims genomics worksets from S3 with heartbeated DynamoDB leases and runs the pipeline."""

__version__ = "0.1.0"
