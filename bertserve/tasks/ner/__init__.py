"""Named-entity recognition: character-span data, a token tagger (any encoder) or a char BiLSTM-CRF, served
as an engine under POST /ner."""
