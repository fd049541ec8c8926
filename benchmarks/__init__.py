"""`make bench`: throughput and cost growth of campaign-send, as ratios measured in one run."""
