//! A Llama-architecture decoder generic over the Burn backend.
