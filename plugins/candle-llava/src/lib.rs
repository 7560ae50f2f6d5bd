//! vlsbench backend for the LLaVA family on candle.
