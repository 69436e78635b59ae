"""The calculator demo: an openai-client agent with a calculator tool, trained on arithmetic word problems."""
