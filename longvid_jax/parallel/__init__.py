"""Device mesh, logical-axis rules (models name axes; configs decide sharding) and multi-process
initialisation."""
