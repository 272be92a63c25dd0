"""The stream-level pipeline: whole streams encoded (`stream.encode_file`) and decoded
(`streamdecoder.StreamDecoder`), frames and adapters together.

It sits above both the codec and the adapters, which it composes, so that the codec never
imports the adapters: codec <- adapters <- pipeline <- sender, receiver.
"""
