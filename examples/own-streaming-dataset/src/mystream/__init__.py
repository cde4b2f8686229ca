"""The dataset of the own-streaming-dataset example: `mystream.shards:load` is its data.entrypoint."""
